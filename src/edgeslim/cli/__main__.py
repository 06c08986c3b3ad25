from edgeslim.cli import main

main()
