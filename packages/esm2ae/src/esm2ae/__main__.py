from esm2ae.cli import main

raise SystemExit(main())
