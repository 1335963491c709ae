from meddeblur.cli import main

raise SystemExit(main())
