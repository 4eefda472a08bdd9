print("dingstream")
