from cloudcontainer.cli import main

main()
