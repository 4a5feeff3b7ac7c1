from famprov.cli import main

main()
