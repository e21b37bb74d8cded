"""Data: real Fashion-MNIST, the derived caption dataset, and loaders for real Fashion-IQ / FashionGen."""
