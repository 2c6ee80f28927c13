"""On-demand query benchmark (see README.md); not part of the test suite."""
