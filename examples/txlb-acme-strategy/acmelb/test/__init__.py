"""
Tests for acmelb.
"""
