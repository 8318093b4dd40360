"""The live experiment page: ``GET /experiments/NAME`` on the router, ``python -m serving page --store URL`` from
a store, and a static snapshot beside a demo's or drill's reports (``docs/page.md``)."""
