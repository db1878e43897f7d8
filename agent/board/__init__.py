"""Board support (LEDs, watchdog, one-way interface setup) for the Pi images."""
