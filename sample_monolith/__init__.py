"""A demo shop monolith and the services carved from it."""
