// DingStream
