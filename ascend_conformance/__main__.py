from ascend_conformance.cli import main

raise SystemExit(main())
