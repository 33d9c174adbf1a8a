"""The platform's use cases: the operations between the flows (and the CLI) and the domain.

Each receives what it works on, a `Platform`, from the composition root (`cme.bootstrap`);
none reaches up for it."""
