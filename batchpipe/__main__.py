from batchpipe.cli import main

main()
