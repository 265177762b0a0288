from stress._cli import command

command()
