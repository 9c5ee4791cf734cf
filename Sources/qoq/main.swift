print("qoq")
