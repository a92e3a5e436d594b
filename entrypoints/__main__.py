"""`python -m entrypoints ARGS` is `llava-labeler ARGS` (how the labeler starts training commands)."""

from entrypoints.cli.main import main

main()
