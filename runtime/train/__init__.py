"""Training the Helios architecture at toy scale (issue 8): the stage-1 recipe of spec section 10
(`stage1`) and a resumable, time-limited loop (`trainer`). The same model code as inference."""
