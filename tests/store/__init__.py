"""Tests of the session stores."""
