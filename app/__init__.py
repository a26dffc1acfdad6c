"""Tuneloom front ends: the Qt GUI (app.gui) and the headless CLI (app.cli)."""
