"""Command-line interface: ``tightfit <command>``; commands register in cli/main.py."""
