from ingester_gateway.cli import main

raise SystemExit(main())
