from tgmux.cli import main

main()
