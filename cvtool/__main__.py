from cvtool.cli.main import main

main()
