from kwstream.cli import main

raise SystemExit(main())
