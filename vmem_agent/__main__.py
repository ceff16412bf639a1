"""`python -m vmem_agent` runs the same CLI as the `vmem-agent` script."""

from .cli import main

main(prog_name="vmem-agent")
