"""The `llava-labeler` command line: `main.py` lists the command modules beside it."""
