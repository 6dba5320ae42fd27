from tandem.app.cli import main

raise SystemExit(main())
