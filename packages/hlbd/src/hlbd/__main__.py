from hlbd.cli import main

raise SystemExit(main())
