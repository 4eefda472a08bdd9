// Replies
