from cloudcontainer.agent.main import main

main()
