from portrait_edit.cli import main

main()
