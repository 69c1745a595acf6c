from cryobus.cli import main

raise SystemExit(main())
