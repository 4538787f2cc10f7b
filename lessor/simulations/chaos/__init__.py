"""Live chaos: real worker processes in real time, with real faults (`lessor chaos`)."""
