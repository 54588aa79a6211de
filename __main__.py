"""Allow ``python -m fedbeat``."""

from fedbeat.tools.cli import main

main()
