"""The console's screens: the dashboard, a run's detail, the morning review, the training, and
the small dialogs. Each full screen is a :class:`~pantheon.console.screens.base.ConsoleScreen`."""
