from market_platform.cli import main

main()
