"""Fundus data: manual records, synthetic eyes, host pipeline and on-device augmentation."""
