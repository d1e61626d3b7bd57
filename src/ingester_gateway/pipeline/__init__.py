"""The data path: request body pieces -> blocks -> digest and codec -> upstream."""
