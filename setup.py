"""What goes into the wheel and the sdist; everything else about the package is in pyproject.toml.

Why a setup.py: pyproject.toml's ``[tool.setuptools]`` table can either find packages or list
them, not find them and add one more under another name. Here ``find_packages`` collects every
package of ``app`` and ``core`` (a page module added tomorrow is in the next wheel without an
edit), and the top-level ``resources/`` folder (the catalog, the demo model and data, the icon),
which stays where it is in the repository, is mapped in as the package ``tuneloom_resources``.
``core.paths.resources_dir()`` finds it there in an installed wheel, ``resources/`` in a
checkout, and ``resources/`` inside a PyInstaller bundle (build_macos.spec).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["app", "app.*", "core", "core.*"]) + ["tuneloom_resources"],
    package_dir={"tuneloom_resources": "resources"},
    package_data={"tuneloom_resources": ["**/*"]},
    # the icon's sources and the script that made them are not needed to run the app
    exclude_package_data={"tuneloom_resources": ["**/__pycache__/*", "**/*.pyc", "icons/make_icons.py",
                                                 "icons/Tuneloom.iconset/*"]},
)
