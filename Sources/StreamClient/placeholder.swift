// StreamClient
