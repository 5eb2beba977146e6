"""A minimal but honest Myriad expert plugin (the tutorial in docs/writing-plugins.md)."""
