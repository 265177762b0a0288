"""Complete, runnable examples: a page-table driver, a one-to-one driver, a race test and a
conformance run. The test suite runs every one of them (``tests/test_examples.py``)."""
