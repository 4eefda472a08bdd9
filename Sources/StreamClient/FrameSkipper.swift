import NIOCore

/// Finds WebSocket frame boundaries in the raw bytes of a socket and cuts out every frame whose
/// header announces a payload above `limit`, before the decoder would buffer it. What remains is
/// a valid WebSocket byte stream, so the frames after an oversized one are read as usual.
///
/// Pure: no I/O, fed with chunks as they arrive (a header may be split across chunks).
struct FrameSkipper {
    enum Piece: Equatable {
        /// Bytes to hand to the WebSocket decoder, in order.
        case pass(ByteBuffer)
        /// A frame of this many payload bytes was (or is being) left out.
        case skipped(payload: UInt64)
    }

    let limit: UInt64
    /// Payload bytes of the current frame still to come.
    private var remaining: UInt64 = 0
    /// True while those bytes belong to an oversized frame.
    private var skipping = false
    /// The start of a header that did not fit into the last chunk.
    private var heldHeader: ByteBuffer?

    init(limit: Int) {
        self.limit = UInt64(limit)
    }

    mutating func scan(_ chunk: ByteBuffer) -> [Piece] {
        var buffer = chunk
        if var held = heldHeader.take() {
            // Rare (a header split across reads); the copy is one chunk.
            held.writeImmutableBuffer(chunk)
            buffer = held
        }
        var pieces: [Piece] = []
        let end = buffer.writerIndex
        var index = buffer.readerIndex
        var runStart = index
        func passRun(upTo stop: Int) {
            if stop > runStart, let slice = buffer.getSlice(at: runStart, length: stop - runStart) {
                pieces.append(.pass(slice))
            }
        }
        while index < end {
            if remaining > 0 {
                let step = Int(min(remaining, UInt64(end - index)))
                index += step
                remaining -= UInt64(step)
                if skipping { runStart = index }
                continue
            }
            skipping = false
            guard let (headerLength, payload) = Self.header(in: buffer, at: index) else {
                passRun(upTo: index)
                heldHeader = buffer.getSlice(at: index, length: end - index)
                return pieces
            }
            if payload > limit {
                passRun(upTo: index)
                pieces.append(.skipped(payload: payload))
                skipping = true
                index += headerLength
                runStart = index
            } else {
                index += headerLength
            }
            remaining = payload
        }
        passRun(upTo: end)
        return pieces
    }

    /// Header length and payload length of the frame starting at `index`, or nil when the header
    /// is not complete yet (RFC 6455 5.2: 2 bytes, then a 2- or 8-byte length, then a 4-byte mask).
    private static func header(in buffer: ByteBuffer, at index: Int) -> (Int, UInt64)? {
        guard let second = buffer.getInteger(at: index + 1, as: UInt8.self) else { return nil }
        let masked = second & 0x80 != 0
        let short = second & 0x7F
        let lengthBytes = short == 126 ? 2 : short == 127 ? 8 : 0
        let headerLength = 2 + lengthBytes + (masked ? 4 : 0)
        guard buffer.writerIndex - index >= headerLength else { return nil }
        let payload: UInt64
        switch lengthBytes {
        case 2: payload = UInt64(buffer.getInteger(at: index + 2, as: UInt16.self)!)
        case 8: payload = buffer.getInteger(at: index + 2, as: UInt64.self)!
        default: payload = UInt64(short)
        }
        return (headerLength, payload)
    }
}
