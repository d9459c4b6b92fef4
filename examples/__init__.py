"""Example user code for fednode (a regular package: the libp2p extra installs a top-level ``examples``
package of its own into site-packages, which would otherwise shadow this directory)."""
