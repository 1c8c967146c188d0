"""The lab's deployment: lab.json (dsconfig) and the launcher behind the `tangodaq` CLI."""
