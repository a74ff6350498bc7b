from mqbench.cli import entry

entry()
