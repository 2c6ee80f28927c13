"""Ingestion benchmark: HTTP batch -> Redis stream -> writer -> energy_readings. See README.md."""
