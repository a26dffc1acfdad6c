"""One module per step of the window, each page owning its controller (what it starts and shows).

Pages get an :class:`app.gui.pages.base.AppContext` (the Qt-free session, the job slots, the
settings, navigation) and talk to each other only through the session and ``ctx.page(key)``.
"""
