from rl_lab.cli import entry

entry()
