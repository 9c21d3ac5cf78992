from fogcoord.cli import main

main()
