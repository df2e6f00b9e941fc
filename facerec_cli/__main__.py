from facerec_cli.main import main

raise SystemExit(main())
