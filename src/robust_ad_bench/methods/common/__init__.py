"""Parts shared by the methods: networks trained from scratch, frozen feature extractors, and training.

No method imports another method; what two of them share lives here.
"""
